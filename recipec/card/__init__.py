"""Provenance and the model card. Imports no torch at module level."""

from recipec.provenance import export_metadata, read_export_metadata, versions
from recipec.card.render import card_context, render_card, write_card

__all__ = ["card_context", "export_metadata", "read_export_metadata", "render_card", "versions", "write_card"]
