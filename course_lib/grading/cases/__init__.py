"""Each chapter's graded parts as the student's kernel sees them: ``PARTS``, name -> ``kernel.Part``
(the function graded, the visible cases' inputs, how to call it). No expected values."""
