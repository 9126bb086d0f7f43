"""The runtime: runs sources, batches, commits to Redis, exports metrics."""
