"""The HDF5 layout of a fastfeat store: names shared by the writer and the reader.

::

    /                       attrs: fastfeat_format, meta (JSON as at creation, for plain h5py users)
    /state                  (10,) int64, contiguous: rows, failed, complete, path bytes, failure path
                            bytes, failure reason bytes, float16 overflow count, capacity, meta slot,
                            meta length
    /meta_json              (2, 65536) uint8, contiguous: the current run description (JSON) is
                            meta_json[state[8], :state[9]] (see StoreWriter.update_meta)
    /features/<key>         (capacity, ...) float32|float16, chunked along the sample axis only
                            <key> is the layer name, with ":avg"/":max" when pooled
    /labels                 (capacity,) int64, -1 where unlabeled
    /index                  (capacity,) int64, the row's image identity: its source image's
                            position in the store's catalog (merged stores: in the concatenation
                            of the inputs' distinct catalogs, see fastfeat.store.merge); all rows
                            of one image (its augmented copies) share it
    /copy                   (capacity,) int32, 0 for the image itself, k >= 1 for augmented copy k
    /paths/ends, /paths/bytes          row i's path (os.fsencode) is bytes[ends[i-1]:ends[i]]
    /class_names            (C,) bytes, os.fsencode of each class (folder) name
    /failures/index         (capacity,) int64, the identity (as /index) of each file that could not be read
    /failures/paths/ends|bytes, /failures/reasons/ends|bytes   as for /paths (reasons in UTF-8)

Crash safety: every dataset is created at its full size, with its space allocated at creation
(uncompressed), in a file whose superblock (version 0, ``libver="earliest"``) carries no status
flag that HDF5 enforces. Appending rows then only writes raw bytes into space that already
exists: the HDF5 metadata never changes while a run writes, so killing the writer at any moment
leaves a file that opens. ``/state`` is written last, after the rows it publishes are flushed:
rows ``[0, state[ROWS])`` are complete, rows past it are garbage and are overwritten on resume.
Datasets are never trimmed; readers use ``state``, not the dataset length.

Stores merged by an earlier fastfeat kept each input's own positions in ``/index`` (their meta
has ``merged_rows`` but no ``merged_index_base``); the reader rebases those per input, so they
read with one identity per source image too.

Compressed features cannot be preallocated (a chunk's size is known once it is compressed), so
their chunks are written whole, once each, and never rewritten: HDF5 then never frees space it
could reuse under committed data. ``state`` publishes rows up to the last end of a batch (one
``StoreWriter.append``: an image's rows and all its augmented copies) that lies in whole written
chunks, so an image is never committed with some of its rows missing; the rows of the last
partial chunk are written at close. Resuming a compressed store copies its committed chunks (as
stored bytes, each checked by decoding it) into a fresh file that then replaces the old one, so
nothing the killed writer left half-done is written over in place; until the pending rows of the
last partial chunk are written, that file publishes only rows in whole chunks, cut where no image
has rows on both sides. ``--resume`` examines a file read-only before it changes anything.
This module never imports TensorFlow.
"""

FORMAT_VERSION = 2

ATTR_FORMAT = "fastfeat_format"
ATTR_META = "meta"

STATE = "state"
STATE_SIZE = 10
S_ROWS, S_FAILED, S_COMPLETE, S_PATH_BYTES, S_FPATH_BYTES, S_FREASON_BYTES, S_OVERFLOW, S_CAPACITY = range(8)
S_META_SLOT, S_META_LEN = 8, 9

#: Two preallocated slots for the run description (JSON), so that updating it is a raw write
#: into the unused slot followed by the ``/state`` write that switches to it.
META_JSON = "meta_json"
META_BYTES = 64 * 1024

FEATURES = "features"
LABELS = "labels"
INDEX = "index"
COPY = "copy"
PATHS = "paths"
CLASS_NAMES = "class_names"
FAILURES = "failures"
FAILURE_INDEX = "failures/index"
FAILURE_PATHS = "failures/paths"
FAILURE_REASONS = "failures/reasons"
ENDS = "ends"
BYTES = "bytes"

#: HDF5 library version bounds of a store: superblock 0, whose status flags HDF5 does not enforce.
LIBVER = ("earliest", "v108")

#: Aim for chunks of about this many bytes (a few samples of a feature map, many pooled vectors).
TARGET_CHUNK_BYTES = 4 * 1024 * 1024
#: Compressed chunks are smaller: a shuffled batch decompresses a whole chunk for each row it takes.
TARGET_COMPRESSED_CHUNK_BYTES = 1024 * 1024
#: Never more rows per chunk than this (pooled vectors: still a cheap unit of random access).
MAX_CHUNK_ROWS = 4096
#: Initial room for the UTF-8/fsencoded bytes of one path or failure reason (grown if needed).
PATH_BYTES_PER_ROW = 160
REASON_BYTES_PER_ROW = 64
