"""Street-level views rendered from OpenStreetMap: reader, procedural demo city, ray caster, datasets."""
