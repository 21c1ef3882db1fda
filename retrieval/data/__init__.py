"""Photos and streets in. Manifests (the CSV of path, lat, lon, heading a user brings), photo folders
imported from their EXIF, cities fetched from open street imagery (Panoramax, Mapillary), the splits
into train / val / test, the street graph from OpenStreetMap that measures walking distance, and the
cell grids over a city. Nothing here knows about networks."""
