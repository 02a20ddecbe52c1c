"""Keep a learning platform's teacher progress in step with FutureLearn's Partners API."""
