"""Console scripts of `pip install .` for the training package's CLIs."""

from data_prep.console import script

export = script("tff_pipeline.export")
prepare = script("tff_pipeline.prepare")
report = script("tff_pipeline.report")
train = script("tff_pipeline.train")
