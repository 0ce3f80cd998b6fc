"""Classifiers on stored features (``fastfeat probe``), applying them to new images
(``fastfeat classify``) and pictures of features (``fastfeat show``).

Needs the ``probe`` extra: ``pip install "fastfeat[probe]"`` (scikit-learn, matplotlib); the
modules import them only when used.
"""

from .api import CLASSIFIERS, ProbeReport, probe
from .model import Classifier
from .persist import ClassifierFileError, load_classifier, save_classifier

__all__ = ["CLASSIFIERS", "Classifier", "ClassifierFileError", "ProbeReport", "load_classifier", "probe",
           "save_classifier"]  # fmt: skip
