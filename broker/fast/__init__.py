"""Speed twins: each module does what a slower, plainer twin does, and names that twin.

Every twin here is proven equal to its slow twin by a differential test under
``tests/fast/`` (one shared ``assert_twins_agree`` helper, Hypothesis where it fits); a twin
that changes meaning is a bug, not an optimisation. These modules import only the standard
library, orjson and PyYAML, so any layer may use them.

- ``schema``: a compiled yes/no JSON Schema check; twin: ``jsonschema``'s ``is_valid``.
- ``yamlload``: PyYAML's safe loader building plain values directly; twin: ``yaml.CSafeLoader``.
- ``jsontext``: orjson for responses and audit lines; twin: ``json.dumps``.
- ``limits``: is a rules document within size limits; twin: ``config.loader._oversized``.
- ``ids``: random uuid4 hex ids; twin: ``uuid.uuid4().hex``.
- ``filenames``: ASCII filename screening; twin: ``core.keys.screen_unicode``.

The presigned POST signer's fast path lives in ``broker.s3.fastpost`` (only ``broker.s3`` may
import botocore); its twin is botocore's ``generate_presigned_post``.
"""
