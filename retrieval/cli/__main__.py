"""`python -m retrieval.cli`, as the `geoloc` entry point."""
from retrieval.cli import main

main()
