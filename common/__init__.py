"""flowray.common: small helpers shared by rewards/ and cluster/ that import nothing else of ours."""
