"""`python -m tff_pipeline.dashboard`: see tff_pipeline/dashboard/main.py."""

from absl import app

from tff_pipeline.dashboard import main

if __name__ == '__main__':
  app.run(main.main)
