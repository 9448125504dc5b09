"""Reading and writing: h5ad inputs, result tables, and the storage backends (local folder, S3)."""
