"""The chaos tests reuse the curation and retrain fixtures (rated chats stored through the real sink)."""

from tests.curation.conftest import put  # noqa: F401
from tests.retrain.test_control import populated  # noqa: F401
