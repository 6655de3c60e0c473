"""Suite-wide settings: the hypothesis profile and the test tiers."""

import pytest
from hypothesis import settings

# No per-example deadline: on a loaded 2-core CI machine a deadline is a timing threshold,
# and a timing threshold in a test is a flaky test. pytest-timeout still catches hangs.
settings.register_profile("kuberde", deadline=None)
settings.load_profile("kuberde")


#: Directory -> tier; the runbook suite runs the real kubectl, gateway, operator and agents.
_TIERS = {"unit": "unit", "integration": "integration", "e2e": "e2e", "runbook": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries its directory's tier marker: `pytest -m unit` runs the fast tier."""
    for item in items:
        tier = next((_TIERS[part] for part in item.path.parts if part in _TIERS), None)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
