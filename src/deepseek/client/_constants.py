"""The SDK's defaults in one place: endpoints, environment variables, retry timing, headers."""

DEFAULT_BASE_URL = "https://api.deepseek.com"
API_KEY_ENV = "DEEPSEEK_API_KEY"
BASE_URL_ENV = "DEEPSEEK_BASE_URL"

# openai's default: up to 2 retries (3 attempts) of connection errors, 408, 409, 429 and >= 500.
DEFAULT_MAX_RETRIES = 2
# Backoff without a server hint: 1 s, 2 s, 4 s, ... capped at 60 s, each cut by up to 25% at
# random so that clients throttled together do not come back together.
INITIAL_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 60.0
RETRY_JITTER = 0.25

# Sent with every POST and reused by all retries of that call; the server answers a repeat with
# the stored response (and `Idempotent-Replayed: true`) instead of generating and billing again.
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

# DeepSeek's finish reason when the backend ran out of resources mid-generation (api.md A7).
INSUFFICIENT_SYSTEM_RESOURCE = "insufficient_system_resource"
