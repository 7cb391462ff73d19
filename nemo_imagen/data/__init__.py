"""Training data: the webdataset pipeline (``webdataset_pipeline.build_train_dataloader``), its typed config
(``config.DataConfig``, the ``model.data`` block), image transforms, the demo dataset (``demo``), the
embedding precache tool (``precache``) and random synthetic data (``synthetic``). Plain PyTorch + webdataset."""
