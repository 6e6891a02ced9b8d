"""The file formats samlabel reads and writes, and nothing else: pure ``parse_*`` / ``to_*`` both ways.

``yolo`` (label lines), ``coco`` (instances json), ``data_yaml`` (Ultralytics' dataset file and split
names). Sources, writers, ``validate`` and ``evaluate`` all go through these modules.
"""
