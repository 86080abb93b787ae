"""The commands of ``lvm-zoo``, one module each, imported only when one runs
(:mod:`inference.cli` dispatches): :mod:`.parser` (every flag), :mod:`.listing` (``list``),
:mod:`.fit`, :mod:`.compare`, :mod:`.runs` (``evaluate``, ``sample``, ``predict``),
:mod:`.check`, and :mod:`.output` (the tables they print). Each module's ``main(args)``
returns the exit status."""
