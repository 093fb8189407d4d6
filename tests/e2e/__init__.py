"""The whole loop through real parts: the service with a real broker and S3, the demo, and the
quick form of the reliability scenarios."""
