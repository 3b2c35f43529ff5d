"""The two exception families of the app.

``InputRejected``: one input file is not something we process (a bad study). It is logged, the file
is skipped, and every other study still gets its result.

``ModelFolderError``: the deployment is broken (missing or corrupt model file). It is fatal at
start-up, before any input is read.
"""


class InputRejected(ValueError):
    """An input file is not a frontal chest radiograph we can process; the run goes on."""


class ModelFolderError(RuntimeError):
    """A model folder is missing, incomplete or fails its checksum; the app cannot start."""
