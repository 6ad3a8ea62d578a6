"""The baseline every adaptation is compared with: the classifier trained on the source alone."""

from graft.adaptation.methods.base import Method

SOURCE_ONLY = Method("source-only", "trained on the source alone (the baseline)")
