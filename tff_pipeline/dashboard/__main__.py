"""`python -m tff_pipeline.dashboard`: see tff_pipeline/dashboard/main.py."""

from data_prep import entry_point
from tff_pipeline.dashboard import main

if __name__ == '__main__':
  entry_point.run(main.main)
