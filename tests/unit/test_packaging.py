"""Public names are pinned, the core installs as `siliconflow_rerank` (never `common`), and the
adapters use only its public names."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import siliconflow_rerank

from ..helpers import ROOT

EXPECTED_CORE = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_EMBEDDING_BATCH_SIZE",
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_KEEPALIVE_EXPIRY",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_DOCUMENTS_PER_REQUEST",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT",
    "SERVICE_ERRORS",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncSiliconFlowClient",
    "AuthenticationError",
    "BadRequestError",
    "BilledUnits",
    "Booking",
    "Budget",
    "BudgetStats",
    "Cache",
    "Calibration",
    "ClientOwner",
    "ClientSettings",
    "DocumentItem",
    "EmbedJob",
    "EmbeddingCache",
    "EmbeddingCapabilities",
    "EmbeddingInput",
    "EmbeddingOptions",
    "EmbeddingResponse",
    "HiddenInputsModel",
    "ImageItem",
    "InMemoryRateLimit",
    "InlineMedia",
    "InternalServerError",
    "InvalidRequestError",
    "JobSummary",
    "MemoryCache",
    "ModelCapabilities",
    "NotFoundError",
    "PermissionDeniedError",
    "QueryItem",
    "RankedResults",
    "RateLimitError",
    "RedisEmbeddingCache",
    "RedisRateLimit",
    "RedisRerankCache",
    "RequestTooLargeError",
    "RerankCache",
    "RerankDocument",
    "RerankJob",
    "RerankOptions",
    "RerankResponse",
    "RerankResult",
    "RerankerSettings",
    "ResponseValidationError",
    "RetryPolicy",
    "ScoreMap",
    "ServiceUnavailableError",
    "SiliconFlowClient",
    "SiliconFlowError",
    "TextItem",
    "Usage",
    "VideoItem",
    "__version__",
    "assembled",
    "calibrate",
    "copied",
    "embedding_capabilities",
    "evaluate",
    "image_item",
    "known_embedding_models",
    "known_models",
    "model_capabilities",
    "redact_error",
    "redact_in_logs",
    "resolve_api_key",
    "resolve_base_url",
    "validate_options",
    "video_item",
]


def test_core_all_is_pinned():
    assert siliconflow_rerank.__all__ == EXPECTED_CORE
    for name in siliconflow_rerank.__all__:
        assert hasattr(siliconflow_rerank, name), name


def test_public_names_have_docstrings():
    for name in siliconflow_rerank.__all__:
        value = getattr(siliconflow_rerank, name)
        if callable(value) and not name.startswith("_") and isinstance(value, type):
            assert value.__doc__, name


def test_installed_core_is_this_package():
    assert Path(siliconflow_rerank.__file__).resolve().parent == ROOT / "common"
    distribution = importlib.metadata.distribution("siliconflow-rerank")
    assert distribution.version == siliconflow_rerank.__version__
    requires = distribution.requires or []
    runtime = [r for r in requires if "extra ==" not in r]
    names = sorted(r.split(">")[0].split("<")[0].strip() for r in runtime)
    assert names == ["aiohttp", "httpx", "msgspec", "pydantic"]


def _python_sources() -> list[Path]:
    skip = {".git", ".venv", "build", "dist", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    return [
        path
        for path in ROOT.rglob("*.py")
        if not skip.intersection(path.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
    ]


def test_nothing_imports_the_core_by_its_folder_name():
    """`common` is only the repository folder: an installed environment has no such package."""
    offenders = []
    for path in _python_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}: {name}"
                for name in names
                if name == "common" or name.startswith("common.")
            ]
    assert offenders == []
    for path in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/*.sh")]:
        text = path.read_text(encoding="utf-8")
        assert "from common" not in text, path
        assert "import common" not in text, path
        assert "-m common" not in text, path


@pytest.mark.parametrize("package", ["langchain_siliconflow", "llama_index_siliconflow"])
def test_adapters_import_only_public_core_names(package):
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("siliconflow_rerank")
            ):
                assert node.module in ("siliconflow_rerank", "siliconflow_rerank.emulator"), (
                    f"{path}: {node.module}"
                )
                for alias in node.names:
                    public = alias.name == "__version__" or not alias.name.startswith("_")
                    assert public, f"{path}: {alias.name}"
                    if node.module == "siliconflow_rerank":
                        assert alias.name in siliconflow_rerank.__all__, f"{path}: {alias.name}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("siliconflow_rerank._"), (
                        f"{path}: {alias.name}"
                    )


OURS = ("siliconflow_rerank", "langchain_siliconflow", "llama_index_siliconflow")


@pytest.mark.parametrize("folder", ["benchmarks", "examples"])
def test_benchmarks_and_examples_import_only_public_names(folder):
    for path in (ROOT / folder).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(OURS):
                assert not any(part.startswith("_") for part in node.module.split(".")), (
                    f"{path}: {node.module}"
                )
                for alias in node.names:
                    public = alias.name == "__version__" or not alias.name.startswith("_")
                    assert public, f"{path}: {alias.name}"


@pytest.mark.parametrize("package", ["common", "langchain_siliconflow", "llama_index_siliconflow"])
def test_packages_are_typed(package):
    assert (ROOT / package / "py.typed").is_file()


@pytest.mark.parametrize(
    ("package", "blocked", "extra"),
    [
        ("langchain_siliconflow", "langchain_core", "pip install 'langchain-core>=1.0,<2'"),
        ("llama_index_siliconflow", "llama_index", "pip install 'llama-index-core>=0.12,<0.15'"),
    ],
)
def test_adapter_without_its_extra_says_which_to_install(package, blocked, extra):
    code = (
        "import sys\n"
        f"sys.modules[{blocked!r}] = None\n"
        f"sys.modules[{blocked + '.core'!r}] = None\n"
        "try:\n"
        f"    import {package}\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert extra in out.stdout


def test_core_import_does_not_pull_in_the_frameworks():
    code = (
        "import sys, siliconflow_rerank, siliconflow_rerank.emulator\n"
        "print(sorted(m for m in sys.modules if m.startswith(('langchain', 'llama_index'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module", params=["wheel", "editable"])
def fresh_venv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with this project installed into it, offline.

    The dependencies come from the running environment's site-packages (through a `.pth` file, which
    adds the folder but runs none of its own `.pth` hooks, so the running environment's install of
    this project stays invisible); this project is built from the checkout without an index.
    """
    home = tmp_path_factory.mktemp(f"venv-{request.param}")
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    (Path(site) / "_outer_site.pth").write_text("\n".join(outer) + "\n", encoding="utf-8")
    # Python 3.11's venv seeds an old setuptools that would shadow the build backend we need.
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    editable = ["-e"] if request.param == "editable" else []
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            *editable,
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return python


def test_fresh_install_has_no_top_level_common(fresh_venv: Path, tmp_path: Path):
    out = subprocess.run(
        [fresh_venv, "-c", "import common"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode != 0
    assert "No module named 'common'" in out.stderr


def test_fresh_install_adapters_import_beside_an_apps_own_common(fresh_venv: Path, tmp_path: Path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "__init__.py").write_text('OWNER = "the app"\n', encoding="utf-8")
    code = (
        "import common\n"
        "from langchain_siliconflow import SiliconFlowRerank as LangChainRerank\n"
        "from llama_index_siliconflow import SiliconFlowRerank as LlamaIndexRerank\n"
        "import siliconflow_rerank\n"
        "print(common.OWNER, LangChainRerank.__name__, LlamaIndexRerank.__name__)\n"
        "print(siliconflow_rerank.__file__)\n"
    )
    out = subprocess.run(
        [fresh_venv, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    first, where = out.stdout.splitlines()
    assert first == "the app SiliconFlowRerank SiliconFlowRerank"
    assert Path(where).parent.name in ("siliconflow_rerank", "common")
    assert not Path(where).is_relative_to(tmp_path)


# -- the core's shape: small modules, none a hub --------------------------------------------------

CORE_MODULES = sorted(path for path in (ROOT / "common").glob("*.py") if path.name != "__init__.py")


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda path: path.name)
def test_no_core_module_is_over_500_lines(path):
    assert len(path.read_text("utf-8").splitlines()) <= 500


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda path: path.name)
def test_no_core_module_imports_more_than_8_siblings(path):
    siblings = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            siblings.update([node.module] if node.module else [a.name for a in node.names])
    assert len(siblings) <= 8, sorted(siblings)
