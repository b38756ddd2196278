"""A live web dashboard of training runs and of the federation (issue 17).

    python -m tff_pipeline.dashboard --runs=runs --topology=topology.yaml

runs.py reads run folders, federation.py asks the nodes how they are,
app.py serves pages and JSON (Flask), main.py is the command line; the
pages are static/ (hand-written SVG charts, no CDN). See docs/dashboard.md.
"""
