import os

# Nothing in the tests may reach a model hub; every model used is local or built in the test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
