"""review-stack's web page: review a paper as it is written, and read and compare evaluation reports."""
