"""The pieces of the example application (``examples/classifier_compression/compress_classifier.py``), for
scripts of your own: ``data_loaders`` (the data sets), ``models`` (architectures built for them),
``device`` (where to train, and the model sharded with FSDP2), ``rng`` (seeds and generator states), ``training``
(an epoch that fires hookprune's events, optionally in mixed precision), ``evaluation`` (top-1/top-5 and loss),
``checkpoint`` (writing, reading, resuming), ``fsdp`` (checkpoints of a sharded model, gathered whole),
``history`` (the best epoch, ``summary.json``, the plot), ``run_folder`` (the run's folder, log and debug
messages, writes a killed run left), ``model_summary`` (the ``--summary`` reports), ``post_training`` (the
``--qe-*`` quantizer and its calibration), ``greedy`` (greedy filter pruning's scoring, fine-tuning and records),
``thinnify``, ``activation_stats``, ``reports`` (masks, confusion matrix, best scores), ``pretrained`` (local
weights), ``arguments`` (the command line and its checks), ``errors`` (the one-line error of a command line) and
``faults`` (the one line that tells a full disk, a refused file, a rank that stopped answering)."""
