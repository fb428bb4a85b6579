"""instillm: instruction fine-tuning of language models, end to end."""

from instillm.data.schema import Example, Message
from instillm.errors import InstillmError

__all__ = ["Example", "Message", "InstillmError", "__version__"]
__version__ = "0.1.0"
