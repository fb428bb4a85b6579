"""Data layer: canonical schema, importers, rendering with loss masks, inspection."""
