"""What the int8 tests' TFLite child scripts share.

TensorFlow is never imported in the pytest process (Paddle Lite aborts the session after it): each
test runs a script in a child interpreter, after this prelude, and the script prints its figures
as JSON on its last line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

PRELUDE = textwrap.dedent('''
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf

    def calibrate_only(model, images):
        """TF's calibrate-only int8 model (float ops, activation ranges recorded): what the
        converter's refinements start from."""
        def rep():
            for im in images:
                yield [im]
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv._experimental_calibrate_only = True
        return conv.convert()

    def run(m, ims):
        """The model's first output for each image, stacked (float32)."""
        it = tf.lite.Interpreter(model_content=m)
        it.allocate_tensors()
        outs = []
        for im in ims:
            it.set_tensor(it.get_input_details()[0]["index"], im)
            it.invoke()
            outs.append(it.get_tensor(it.get_output_details()[0]["index"]).astype(np.float32))
        return np.concatenate(outs)
''')


def run_child(script: str, timeout: int = 300) -> dict[str, Any]:
    """Run PRELUDE + ``script`` in a child interpreter; its last stdout line, parsed."""
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
