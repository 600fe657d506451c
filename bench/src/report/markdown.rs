//! A small Markdown writer: headings, paragraphs, bullets and tables.

/// The report being written.
#[derive(Debug, Default)]
pub(crate) struct Markdown {
    text: String,
}

impl Markdown {
    /// A `##` heading, after a blank line.
    pub(crate) fn heading(&mut self, title: &str) {
        self.line(&format!("\n## {title}\n"));
    }

    /// One line of text.
    pub(crate) fn line(&mut self, text: &str) {
        self.text.push_str(text);
        self.text.push('\n');
    }

    /// A paragraph after a blank line.
    pub(crate) fn paragraph(&mut self, text: &str) {
        self.line(&format!("\n{text}"));
    }

    /// One bullet per item.
    pub(crate) fn bullets<S: AsRef<str>>(&mut self, items: impl IntoIterator<Item = S>) {
        for item in items {
            self.line(&format!("- {}", item.as_ref()));
        }
    }

    /// A table; `align` has one letter per column, `l` (left) or `r` (right).
    pub(crate) fn table<R>(&mut self, header: &[&str], align: &str, rows: R)
    where
        R: IntoIterator,
        R::Item: IntoIterator<Item = String>,
    {
        debug_assert_eq!(header.len(), align.len(), "one alignment per column");
        let names: Vec<String> = header
            .iter()
            .map(|name| {
                if name.is_empty() {
                    " ".to_owned()
                } else {
                    format!(" {name} ")
                }
            })
            .collect();
        self.line(&format!("|{}|", names.join("|")));
        let rules: Vec<&str> = align
            .chars()
            .map(|side| if side == 'r' { "---:" } else { "---" })
            .collect();
        self.line(&format!("|{}|", rules.join("|")));
        for row in rows {
            let cells: Vec<String> = row.into_iter().collect();
            self.line(&format!("| {} |", cells.join(" | ")));
        }
    }

    /// The text written so far.
    pub(crate) fn into_text(self) -> String {
        self.text
    }
}
