"""Files in and out: the input walk, decoding (in worker processes), encoding, names, atomic writes.

  source.py         the lazy, ordered, filtered walk over the input folder
  links.py          the walk's policy for symlinks and special files, and its messages
  decode.py         one file -> pixels, defensively (caps, allowed formats, EXIF, ICC)
  modes.py          every Pillow mode into the four pixel layouts stages get
  filebytes.py      a file's bytes read once under the size cap; Pillow's pixel cap in step
  decode_errors.py  failure messages with a fix (the decoder's and the pool's), format sniffing
  decode_worker.py  the worker process that runs decode.py on hostile files
  decodepool.py     the pool of those workers: a crash or a hang costs one file
  pixel_ipc.py      pixels from a worker to the parent through anonymous memory files
  prefetch.py       decode outcomes running ahead of the stages, bounded by bytes
  naming.py         output formats and names that mirror the input tree
  encode.py         tensors and arrays -> JPEG, PNG (8/16-bit), WebP, TIFF bytes
  atomic.py         writes under the output root that are never partial and never escape it
  outroot.py        the output root: writable or not, created, undone after a failed first run

Nothing here imports torch.
"""
