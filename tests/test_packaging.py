"""Public names are pinned, `common` is ours, and adapters use only `common`'s public names."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import common

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_COMMON = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_KEEPALIVE_EXPIRY",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_DOCUMENTS_PER_REQUEST",
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
    "DocumentItem",
    "ImageItem",
    "InlineMedia",
    "InternalServerError",
    "InvalidRequestError",
    "ModelCapabilities",
    "NotFoundError",
    "PermissionDeniedError",
    "QueryItem",
    "RateLimitError",
    "RequestTooLargeError",
    "RerankCache",
    "RerankDocument",
    "RerankResponse",
    "RerankResult",
    "ResponseValidationError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "SiliconFlowClient",
    "SiliconFlowError",
    "TextItem",
    "Usage",
    "VideoItem",
    "__version__",
    "image_item",
    "known_models",
    "model_capabilities",
    "validate_options",
    "video_item",
]


def test_common_all_is_pinned():
    assert common.__all__ == EXPECTED_COMMON
    for name in common.__all__:
        assert hasattr(common, name), name


def test_public_names_have_docstrings():
    for name in common.__all__:
        value = getattr(common, name)
        if callable(value) and not name.startswith("_") and isinstance(value, type):
            assert value.__doc__, name


def test_installed_common_is_this_package():
    assert Path(common.__file__).resolve().parent == ROOT / "common"
    distribution = importlib.metadata.distribution("siliconflow-rerank")
    assert distribution.version == common.__version__
    requires = distribution.requires or []
    runtime = [r for r in requires if "extra ==" not in r]
    names = sorted(r.split(">")[0].split("<")[0].strip() for r in runtime)
    assert names == ["httpx", "httpx-aiohttp", "pydantic"]


@pytest.mark.parametrize("package", ["langchain_siliconflow", "llama_index_siliconflow"])
def test_adapters_import_only_public_common_names(package):
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("common")
            ):
                assert node.module in ("common", "common.emulator"), f"{path}: {node.module}"
                for alias in node.names:
                    assert not alias.name.startswith("_"), f"{path}: {alias.name}"
                    if node.module == "common":
                        assert alias.name in common.__all__, f"{path}: {alias.name}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("common._"), f"{path}: {alias.name}"


@pytest.mark.parametrize("package", ["common", "langchain_siliconflow", "llama_index_siliconflow"])
def test_packages_are_typed(package):
    assert (ROOT / package / "py.typed").is_file()


@pytest.mark.parametrize(
    ("package", "blocked", "extra"),
    [
        ("langchain_siliconflow", "langchain_core", "siliconflow-rerank[langchain]"),
        ("llama_index_siliconflow", "llama_index", "siliconflow-rerank[llama-index]"),
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
        "import sys, common, common.emulator\n"
        "print(sorted(m for m in sys.modules if m.startswith(('langchain', 'llama_index'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
