"""What a conversion leaves behind, with no torch: the typed records (`records`), the
manifest made of them (`manifest`), the atomic publish (`publish`), the one reader of a
published directory (`reader`), and the reports rendered from the manifest (`report`)."""
