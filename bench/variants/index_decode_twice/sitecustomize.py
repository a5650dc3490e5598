"""Benchmark variant (never imported by the project): POST /index decodes each image a second time for its
thumbnail, as before an image decoded whole was decoded once for both (app/_embedding.py, _model_input), for the
before/after of bench_index_decode.py."""
import sys

import app._embedding as _embedding


def _model_input_alone(service, crop, thumbnail_size):
    # never hands the decoded image on: _prepare decodes it again at the thumbnail's draft scale
    return lambda img: (service.embedder.preprocess(img, crop, owned=True), None)


_embedding._model_input = _model_input_alone
sys.stderr.write("bench variant index_decode_twice active\n")
