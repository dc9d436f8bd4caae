"""The pieces of the example application (``examples/classifier_compression/compress_classifier.py``), for
scripts of your own: ``data_loaders`` (the data sets), ``models`` (architectures built for them),
``device`` (where to train), ``rng`` (seeds and generator states), ``training`` (an epoch that fires
hookprune's events), ``evaluation`` (top-1/top-5 and loss), ``checkpoint`` (writing, reading, resuming),
``history`` (the best epoch, ``summary.json``, the plot), ``run_folder`` (the run's folder and log) and
``errors`` (the one-line error of a command line)."""
