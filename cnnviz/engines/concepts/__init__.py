"""What a model relies on, found over a data set: its strategies, the concepts it uses, the slices
where it fails.

  strategies.py  Spectral Relevance Analysis (SpRAy, Lapuschkin et al. 2019): each class's maps
                 clustered spectrally (eigengap), embedded in 2-D, clusters that look like a
                 shortcut flagged
  strategies_spray.py, strategies_build.py, strategies_result.py   SpRAy on maps already computed
                 (`spray`, which the audit and benchmarks call); from a run's maps to its clusters,
                 mean maps and representatives; `StrategiesResult`, redrawn by `cnnviz render`
  tcav.py        Testing with Concept Activation Vectors (Kim et al. 2018): does a user-named
                 concept, given as a folder of examples, move a class's score; significance over
                 random concepts (the API and its definition; `tcav_core`: result type, checks, one CAV,
                 the scores and the t-test; `tcav_scan`: the passes over the images, progress, torchrun)
  slices.py      failure slices: the images the model gets wrong or is unsure of, grouped by
                 their features (or maps) and described by what they share
  shortcuts.py   planted shortcuts: marks pasted on images, for the proof that the audit finds them

Imports the core modules of cnnviz, `engines.common`, `engines.attribution` (the maps) and
`engines.audit` (its data reading and progress files); never the renderers or the command line.
"""
