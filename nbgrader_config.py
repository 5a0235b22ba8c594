"""nbgrader configuration for the course (instructor side only; never needed on Colab).

solutions/<chNN>/ holds the instructor notebooks, exercises/<chNN>/ the released student
versions (`make release`), submitted/<student>/<chNN>/ what students hand in
(`make autograde A=chNN`).
"""

c = get_config()  # noqa: F821  (provided by nbgrader when it loads this file)

c.CourseDirectory.course_id = "lm-course"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"

# Every graded cell runs in seconds on a laptop CPU; a cell that runs longer is stopped
# and scores 0 while the rest of the notebook is still graded.
c.ExecutePreprocessor.timeout = 30
c.ExecutePreprocessor.interrupt_on_timeout = True

# A student who deletes a test cell must not escape the test: nbgrader puts missing
# grade cells back from the gradebook (off by default in nbgrader 0.9).
c.OverwriteCells.add_missing_cells = True

# Students' code runs in a sandbox (course_lib.grading.sandbox: bubblewrap, no network, no view of
# the course folder or the gradebook, limits on memory, CPU time, processes and output).
# Where none can be made, grading refuses unless c.SandboxedExecute.allow_unsandboxed =
# True (python -m course_lib.grading.autograde --unsandboxed). Limits: c.SandboxedExecute.memory_mb,
# cpu_seconds, processes, wall_seconds, output_mb and others (see course_lib.grading.autograde).
c.Autograde.autograde_preprocessors = [
    "course_lib.grading.autograde.SandboxedExecute",  # in place of nbgrader's Execute
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]

# Feedback shows the visible tests, their outputs and every score, never the source of a
# hidden test (course_lib.grading.autograde.HideHiddenTests).
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "course_lib.grading.autograde.HideHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]

# Released notebooks keep their outputs cleared.
c.ClearOutput.enabled = True
