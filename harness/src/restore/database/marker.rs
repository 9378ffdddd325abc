//! The negative control: a row written after the backup, absent after a restore from it.

use super::*;

/// The marker row of the negative control: a `users` row written into the source database
/// after the backup. A restore that really came from the backup does not contain it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerRow {
    /// The run id it carries.
    pub run_id: String,
}

impl MarkerRow {
    /// A marker for `run_id`.
    pub fn new(run_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
        }
    }

    /// The username the marker row has.
    pub fn username(&self) -> String {
        format!("rehearsal-marker-{}", self.run_id)
    }

    /// How the marker is named in a verdict.
    pub fn subject(&self) -> String {
        format!("public.users username={}", self.username())
    }

    /// Writes the marker row.
    ///
    /// # Errors
    /// [`RestoreError::Postgres`] when the insert fails.
    pub async fn write(&self, client: &Client) -> Result<(), RestoreError> {
        let name = self.username();
        client
            .execute(
                "INSERT INTO public.users (username, email, password_hash) VALUES ($1::text, $1::text || '@marker.invalid', 'rehearsal-marker')",
                &[&name],
            )
            .await
            .map_err(RestoreError::query(format!("write marker row {name}")))?;
        Ok(())
    }

    /// How many marker rows the database holds (0 after a good restore). A database without a
    /// `users` table holds none.
    ///
    /// # Errors
    /// [`RestoreError::Postgres`] when the query fails.
    pub async fn count(&self, client: &Client) -> Result<u64, RestoreError> {
        let exists: bool = client
            .query_one("SELECT to_regclass('public.users') IS NOT NULL", &[])
            .await
            .map_err(RestoreError::query("look for the users table"))?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let name = self.username();
        let count: i64 = client
            .query_one(
                "SELECT count(*) FROM public.users WHERE username = $1",
                &[&name],
            )
            .await
            .map_err(RestoreError::query(format!("look for marker row {name}")))?
            .get(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
