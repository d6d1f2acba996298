"""The evaluation wing: the domain classifier (`domain_classifier.py`, its network `domain_net.py`),
the metrics over its features (`metrics/`, memorization included), the evaluate stage's subsamples
and memorization check (`scoring.py`), the evaluate and utility stages' figures (`plots.py`), the
downstream-utility protocol (`downstream.py`, its network `downstream_net.py`) and augment's
sample filters (`filters.py`)."""
