"""llmbook: the library built by the book *Build a GPT-style LLM from scratch*.

Each module is generated from the chapter that explains it (see tools/tangle.py);
import what you need from the modules, for example `from llmbook.data import data_file`.
"""

__version__ = "0.1.0"
