-- What the target said about an applied entity besides its changes: NetBox's diode plugin
-- warns, for example, when a create lost a race and was bound to the existing row without
-- storing any of its fields. Kept with the change set; NULL when there were none.
ALTER TABLE change_sets ADD COLUMN warnings jsonb;
