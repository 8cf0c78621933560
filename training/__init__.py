"""Training of MRSynthesis models: ``python -m training.train --config training/configs/<name>.json``.

See training/README.md for the data layouts, the recipe choices and the bundled model.
"""
