"""From a trained network to an answer. The run's FAISS index of database descriptors (built by
run_index, place means by places), the vote of a query's neighbours, the cells prior and the geometric
rerank that reorder them, the route decoder for photos taken in order, and the Locator that puts them
together for `query`, `serve` and the Python API."""
