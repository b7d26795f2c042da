"""Shared pytest configuration: hypothesis runs derandomised on CI, so a CI run is reproducible."""
import os
from hypothesis import settings

settings.register_profile('ci', derandomize=True, deadline=None, print_blob=True)
settings.register_profile('dev', deadline=None, print_blob=True)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci' if os.environ.get('CI') else 'dev'))
