"""Training and data-set building for Qu et al. (registered multimodal MRI with lesion labels from noise).

See training/qu/README.md for the commands and recipes.
"""
