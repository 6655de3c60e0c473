"""Suite-wide settings."""

from hypothesis import settings

# No per-example deadline: on a loaded 2-core CI machine a deadline is a timing threshold,
# and a timing threshold in a test is a flaky test. pytest-timeout still catches hangs.
settings.register_profile("kuberde", deadline=None)
settings.load_profile("kuberde")
