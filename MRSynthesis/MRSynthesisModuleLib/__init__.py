"""The Slicer side of MRSynthesis: everything the module needs besides MRSynthesisLib.

Rooms: ``qtcompat`` (Slicer's ``qt`` or Qt.py), ``paths`` (where the library and
resources are), ``process`` (the command line in a background process), ``job`` (what
one synthesis run asks and returns), ``scene`` (MRML nodes to files and back),
``parameters`` (the parameter node), ``catalog`` (available models), ``panel`` (the
module panel's wiring), ``widgets`` (Slicer-only widgets), ``views`` (slice layouts) and
``torchsetup`` (installing PyTorch with the user's consent).
"""
