"""`geoloc serve`: a local web page that locates dropped photos with a trained embedding run, offline."""
