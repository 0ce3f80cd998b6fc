"""The HDF5 layout of a fastfeat store: names shared by the writer and the reader.

::

    /                       attrs: format, complete, rows, meta (JSON)
    /features/<key>         (N, ...) float32|float16, chunked along the sample axis
                            <key> is the layer name, with ":avg"/":max" when pooled
    /labels                 (N,) int64, -1 where unlabeled
    /paths                  (N,) bytes, file paths relative to the source root (os.fsencode)
    /index                  (N,) int64, the row's position in the catalog
    /copy                   (N,) int32, 0 for the image itself, k >= 1 for augmented copy k
    /class_names            (C,) UTF-8 strings
    /failures/index         (F,) int64, catalog position of each file that could not be read
    /failures/paths         (F,) bytes
    /failures/reasons       (F,) UTF-8 strings

Rows ``[0, rows)`` are complete: the writer bumps ``rows`` only after a whole batch is written
and flushed. ``complete`` is set once the run has seen every catalog item.
This module never imports TensorFlow.
"""

FORMAT_VERSION = 1

ATTR_FORMAT = "fastfeat_format"
ATTR_COMPLETE = "complete"
ATTR_ROWS = "rows"
ATTR_META = "meta"

FEATURES = "features"
LABELS = "labels"
PATHS = "paths"
INDEX = "index"
COPY = "copy"
CLASS_NAMES = "class_names"
FAILURES = "failures"
FAILURE_INDEX = "failures/index"
FAILURE_PATHS = "failures/paths"
FAILURE_REASONS = "failures/reasons"

#: Aim for chunks of about this many bytes (a few samples of a feature map, many pooled vectors).
TARGET_CHUNK_BYTES = 4 * 1024 * 1024
