"""CustomResourceDefinitions: the CRD kind, the kinds CRDs add to the API, and their structural schemas.

`definition` owns the CRD object (defaults, validation, status, served kinds); `schema` and `cel` validate,
default and prune custom resources; `columns` prints them as tables; `custom` is the glue the generic storage
calls for any CRD-defined kind; `serving` keeps the served kinds in step with the stored CRDs.
"""
