"""siliconflow-rerank core: typed sync and async clients for SiliconFlow's `POST /v1/rerank` and
`POST /v1/embeddings`.

Example:
    >>> from siliconflow_rerank import SiliconFlowClient, image_item
    >>> with SiliconFlowClient() as client:  # doctest: +SKIP
    ...     response = client.rerank("apple", ["apple pie", "banana bread"], top_n=1)
    ...     best = response.results[0].index
"""

from __future__ import annotations

from ._adapters import ClientOwner, RerankerSettings
from ._cache import EmbeddingCache, MemoryCache, RerankCache
from ._calibration import Calibration, ScoreMap, calibrate
from ._capabilities import (
    EmbeddingCapabilities,
    ModelCapabilities,
    embedding_capabilities,
    known_embedding_models,
    known_models,
    model_capabilities,
)
from ._client import AsyncSiliconFlowClient, SiliconFlowClient
from ._config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_EMBEDDING_BATCH_SIZE,
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_KEEPALIVE_EXPIRY,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DOCUMENTS_PER_REQUEST,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    resolve_api_key,
    resolve_base_url,
)
from ._embeddings import EmbeddingInput, EmbeddingOptions, EmbeddingResponse
from ._evaluate import evaluate
from ._exceptions import (
    SERVICE_ERRORS,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    ResponseValidationError,
    ServiceUnavailableError,
    SiliconFlowError,
    redact_error,
    redact_in_logs,
)
from ._job_kinds import EmbedJob, RerankJob
from ._job_state import JobSummary
from ._media import (
    DocumentItem,
    ImageItem,
    InlineMedia,
    QueryItem,
    TextItem,
    VideoItem,
    image_item,
    video_item,
)
from ._protocols import Booking, Budget, Cache
from ._ranking import RankedResults, RerankDocument, RerankResponse, RerankResult
from ._ratelimit import InMemoryRateLimit
from ._redis import RedisEmbeddingCache, RedisRerankCache
from ._redis_budget import BudgetStats, RedisRateLimit
from ._rerank import RerankOptions, validate_options
from ._retry import RetryPolicy
from ._settings import ClientSettings, HiddenInputsModel
from ._version import __version__
from ._wire import BilledUnits, Usage, assembled, copied

__all__ = [
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
