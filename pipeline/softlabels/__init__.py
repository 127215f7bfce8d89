"""The soft-label dataset format (docs/FORMAT.md): its one writer, its one reader, its validator."""

from pipeline.softlabels.schema import FORMAT_VERSION, LabelSpec

__all__ = ["FORMAT_VERSION", "LabelSpec"]
